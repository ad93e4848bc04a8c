// Small helpers the examples share: a progress bar that redraws in place on a terminal (and
// prints quarter marks otherwise), and an SVG line chart of loss curves.

export class Progress {
  private readonly tty = process.stdout.isTTY === true;
  private nextQuarter = 1;
  constructor(private readonly label: string, private readonly total: number) {}

  update(done: number, note: string): void {
    const f = Math.min(1, done / this.total);
    const w = 30;
    const n = Math.round(f * w);
    const line = `${this.label} [${'#'.repeat(n)}${'.'.repeat(w - n)}] ${String(Math.round(f * 100)).padStart(3)}% ${note}`;
    if (this.tty) {
      process.stdout.write(`\r${line}`);
      if (done >= this.total) process.stdout.write('\n');
    } else if (f >= this.nextQuarter / 4) {
      console.log(line);
      while (f >= this.nextQuarter / 4) this.nextQuarter++;
    }
  }
}

export interface Series {
  name: string;
  color: string;
  /** [x, y] points. */
  points: [number, number][];
  dashed?: boolean;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');

/** A line chart of several series with axes, ticks and a legend. */
export function lineChart(title: string, xLabel: string, yLabel: string, series: Series[], caption = ''): string {
  const [W, H, L, R, T, B] = [720, 400, 64, 20, 40, 70];
  const all = series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y));
  const [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  const pad = (y1 - y0) * 0.05 || 1;
  [y0, y1] = [y0 - pad, y1 + pad];
  const sx = (x: number) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y: number) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    '<rect width="100%" height="100%" fill="white"/>',
    `<text x="${W / 2}" y="22" text-anchor="middle" font-weight="bold" font-size="14">${esc(title)}</text>`,
    `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#444"/>`,
    `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#444"/>`,
  ];
  for (let i = 0; i <= 5; i++) {
    const y = y0 + ((y1 - y0) * i) / 5;
    const x = x0 + ((x1 - x0) * i) / 5;
    parts.push(`<line x1="${L}" y1="${sy(y)}" x2="${W - R}" y2="${sy(y)}" stroke="#eee"/>`);
    parts.push(`<text x="${L - 6}" y="${sy(y) + 4}" text-anchor="end">${y.toFixed(2)}</text>`);
    parts.push(`<text x="${sx(x)}" y="${H - B + 16}" text-anchor="middle">${Math.round(x)}</text>`);
  }
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - B + 34}" text-anchor="middle">${esc(xLabel)}</text>`);
  parts.push(`<text x="16" y="${(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 16 ${(T + H - B) / 2})">${esc(yLabel)}</text>`);
  series.forEach((s, i) => {
    const d = s.points.filter(([, y]) => Number.isFinite(y)).map(([x, y], j) => `${j ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join('');
    parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="${s.dashed ? 2.5 : 1.5}"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    const lx = L + 10 + i * 220;
    parts.push(`<line x1="${lx}" y1="${H - 18}" x2="${lx + 24}" y2="${H - 18}" stroke="${s.color}" stroke-width="2.5"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    parts.push(`<text x="${lx + 30}" y="${H - 14}">${esc(s.name)}</text>`);
  });
  if (caption) parts.push(`<text x="${W - R}" y="${H - 40}" text-anchor="end" font-size="10" fill="#555">${esc(caption)}</text>`);
  parts.push('</svg>\n');
  return parts.join('\n');
}
