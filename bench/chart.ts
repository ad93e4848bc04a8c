// A small SVG bar chart of the linear benchmark: time and peak memory growth per vocabulary
// size, cutloss next to TensorFlow.js, so the README can show the run at a glance.

export interface ChartGroup {
  label: string; // e.g. "V = 32000"
  bars: { name: string; seconds: number; growthMiB: number }[];
}

const COLORS: Record<string, string> = { cutloss: '#2a7ab9', tfjs: '#e8902c' };

function panel(title: string, groups: ChartGroup[], value: (b: ChartGroup['bars'][number]) => number, unit: string, x0: number): string {
  const [w, h, top, bottom] = [360, 260, 40, 40];
  const max = Math.max(...groups.flatMap((g) => g.bars.map(value)), 1e-9);
  const barW = 44;
  const groupW = w / groups.length;
  const parts = [`<text x="${x0 + w / 2}" y="20" text-anchor="middle" font-weight="bold">${title}</text>`];
  groups.forEach((g, gi) => {
    const gx = x0 + gi * groupW + (groupW - g.bars.length * (barW + 6)) / 2;
    g.bars.forEach((b, bi) => {
      const v = value(b);
      const bh = ((h - top - bottom) * Math.max(v, 0)) / max;
      const x = gx + bi * (barW + 6);
      const y = h - bottom - bh;
      parts.push(`<rect x="${x}" y="${y}" width="${barW}" height="${bh}" fill="${COLORS[b.name] ?? '#888'}"/>`);
      parts.push(`<text x="${x + barW / 2}" y="${y - 4}" text-anchor="middle" font-size="11">${v.toFixed(v < 10 ? 1 : 0)} ${unit}</text>`);
    });
    parts.push(`<text x="${x0 + gi * groupW + groupW / 2}" y="${h - bottom + 18}" text-anchor="middle" font-size="12">${g.label}</text>`);
  });
  parts.push(`<line x1="${x0}" y1="${h - bottom}" x2="${x0 + w}" y2="${h - bottom}" stroke="#444"/>`);
  return parts.join('\n');
}

export function linearChart(groups: ChartGroup[], caption: string): string {
  const names = [...new Set(groups.flatMap((g) => g.bars.map((b) => b.name)))];
  const legend = names
    .map((n, i) => `<rect x="${20 + i * 110}" y="272" width="12" height="12" fill="${COLORS[n] ?? '#888'}"/><text x="${38 + i * 110}" y="283" font-size="12">${n}</text>`)
    .join('\n');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="780" height="310" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
${panel('forward + backward time', groups, (b) => b.seconds, 's', 20)}
${panel('peak memory growth', groups, (b) => b.growthMiB, 'MiB', 400)}
${legend}
<text x="760" y="300" text-anchor="end" font-size="10" fill="#555">${caption}</text>
</svg>
`;
}
