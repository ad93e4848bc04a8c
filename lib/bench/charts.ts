// The sweep's charts: time and peak memory against the vocabulary, one line per contestant,
// as vega-lite specs rendered to SVG by vega in Node (no browser, no canvas). vega and
// vega-lite are optional: without them the report says how to get the charts.

import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { BenchReport } from './report.js';

interface Point {
  V: number;
  contestant: string;
  value: number;
}

/** The sweep's points: fwd+bwd median (ms) and peak memory (MiB) per contestant and V. */
export function sweepPoints(r: BenchReport): { time: Point[]; memory: Point[] } {
  const time: Point[] = [];
  const memory: Point[] = [];
  for (const c of r.cases) {
    if (!c.case.sweep) continue;
    for (const row of c.rows) {
      // the legend names the contestant; the subtitle says the backend and shape
      const contestant = row.label.split(' (')[0]!;
      time.push({ V: c.case.V, contestant, value: row.fwdBwd.medianMs });
      const bytes = row.device?.peakBytes ?? row.host?.growthBytes ?? null;
      if (bytes !== null) memory.push({ V: c.case.V, contestant, value: bytes / 2 ** 20 });
    }
  }
  return { time, memory };
}

function spec(points: Point[], title: string, yTitle: string, subtitle: string): Record<string, unknown> {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: { text: title, subtitle },
    width: 420,
    height: 260,
    background: 'white',
    data: { values: points },
    mark: { type: 'line', point: true },
    encoding: {
      x: {
        field: 'V', type: 'quantitative', title: 'vocabulary V', scale: { type: 'log', base: 2 },
        axis: { values: [...new Set(points.map((p) => p.V))], format: '~s' },
      },
      y: { field: 'value', type: 'quantitative', title: yTitle, scale: { type: 'log' } },
      color: { field: 'contestant', type: 'nominal', title: null, legend: { orient: 'bottom', columns: 2, labelLimit: 360 } },
      tooltip: [{ field: 'contestant' }, { field: 'V' }, { field: 'value', format: '.1f' }],
    },
  };
}

/** Renders one vega-lite spec to SVG. */
export async function renderSvg(vlSpec: Record<string, unknown>): Promise<string> {
  const vega = await import('vega');
  const vl = await import('vega-lite');
  const compiled = vl.compile(vlSpec as unknown as Parameters<typeof vl.compile>[0]).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}

export async function renderCharts(r: BenchReport, outDir: string): Promise<{ files: string[]; reason: string | null }> {
  const { time, memory } = sweepPoints(r);
  if (time.length === 0) return { files: [], reason: 'no sweep case ran: no charts' };
  const shape = r.cases.find((c) => c.case.sweep)!.case;
  const where = r.backend === 'cpu' || r.backend === 'js' ? `${r.machine.cpu}, ${r.settings.threads} threads` : r.gpu.gpus[0]?.name ?? r.backend;
  const subtitle = `linearCrossEntropy fwd+bwd, N ${shape.N}, D ${shape.D}, ${shape.dtype}; ${r.backend}${r.settings.tiny ? ' (tiny shapes)' : ''}; ${where}; ${r.date.slice(0, 10)}`;
  const files: string[] = [];
  try {
    const timeSvg = await renderSvg(spec(time, 'Time against vocabulary', 'fwd+bwd, ms (median)', subtitle));
    writeFileSync(path.join(outDir, 'sweep-time.svg'), timeSvg);
    files.push('sweep-time.svg');
    if (memory.length > 0) {
      const memSvg = await renderSvg(spec(memory, 'Peak memory against vocabulary', 'peak memory growth of one call, MiB', subtitle));
      writeFileSync(path.join(outDir, 'sweep-memory.svg'), memSvg);
      files.push('sweep-memory.svg');
    }
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const reason = err.code === 'ERR_MODULE_NOT_FOUND' || /Cannot find (module|package)/.test(err.message)
      ? 'charts need vega and vega-lite: npm i vega vega-lite'
      : `charts failed: ${err.message}`;
    return { files, reason };
  }
  return { files, reason: null };
}
