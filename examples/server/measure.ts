// The measurement of `npm run demo:server`: each mode in a fresh server process on 127.0.0.1,
// driven by the fixed-rate load generator from this process (both share the machine's cores),
// then stopped with SIGTERM; and the standalone training loop in a process of its own, before
// and after the modes.

import { spawn, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import { createInterface } from 'node:readline';
import { loadNames } from '../../bench/demo/namesModel.js';
import { runLoad, type LoadRequest, type LoadResult } from './load.js';
import type { TrainMode } from './trainer.js';

export interface MeasureOptions { seconds: number; rate: number; warmup: number; main: string }

export interface ModeFigures {
  requestsPerSecond: number;
  ok: number;
  failed: number;
  latencyMs: { score: { p50: number; p99: number }; sample: { p50: number; p99: number }; all: { p50: number; p99: number } };
  eventLoopDelayMs: { p50: number; p99: number; max: number };
  tokensPerSecond: number;
  steps: number;
  stepMs: number;
  loss: number;
  generatorLagMsP99: number;
  exitCode: number | null;
}

export interface Measurement {
  seconds: number;
  rate: number;
  /** The 1-minute load average before and after: other work on the machine shows here. */
  machine: { cpu: string; cores: number; node: string; loadAverage: [before: number, after: number] };
  /** The standalone loop's mean of a run before the modes and one after; firstLast: each. */
  standalone: { tokensPerSecond: number; steps: number; stepMs: number; firstLast: [first: number, last: number] };
  modes: Record<'async' | 'sync' | 'off', ModeFigures>;
  targets: {
    asyncLoopDelayP99Under20ms: boolean;
    asyncScoreP99OverFloor: number;
    asyncScoreP99Within2xFloor: boolean;
    asyncTokensOverStandalone: number;
    asyncTokensAtLeast80pct: boolean;
    syncTokensOverStandalone: number;
  };
}

const round = (x: number, d = 2) => (Number.isFinite(x) ? Math.round(x * 10 ** d) / 10 ** d : x);
const progress = (line: string) => process.stderr.write(`${line}\n`);

/** Start `main` with these flags in a child process (the way this one was started: tsx). */
function child(main: string, flags: string[]): ChildProcess {
  return spawn(process.execPath, [...process.execArgv, main, ...flags], { stdio: ['ignore', 'pipe', 'inherit'] });
}

const exited = (p: ChildProcess) =>
  new Promise<number | null>((resolve) => {
    if (p.exitCode !== null) resolve(p.exitCode);
    else p.once('exit', (code) => resolve(code));
  });

/** The first stdout line that matches, or an error when the process ends first. */
function lineOf(p: ChildProcess, re: RegExp): Promise<RegExpMatchArray> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: p.stdout! });
    lines.on('line', (line) => {
      const m = line.match(re);
      if (m !== null) { lines.close(); resolve(m); }
    });
    p.once('exit', (code) => reject(new Error(`child exited (code ${code}) before printing ${re}`)));
  });
}

async function json<T>(url: string, method = 'GET'): Promise<T> {
  const res = await fetch(url, { method });
  if (!res.ok) throw new Error(`${method} ${url}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

interface Stats {
  window: { tokensPerSecond: number; steps: number; stepMs: number };
  eventLoopDelayMs: { p50: number; p99: number; max: number };
  loss: number;
}

async function measureMode(mode: TrainMode, o: MeasureOptions, next: (i: number) => LoadRequest): Promise<ModeFigures> {
  const p = child(o.main, ['--serve', '--mode', mode, '--port', '0']);
  try {
    const [, url] = await lineOf(p, /^listening (http:\/\/127\.0\.0\.1:\d+)/);
    if (o.warmup > 0) await runLoad({ url: url!, rate: o.rate, seconds: o.warmup, next }); // JIT, caches, pools
    await json(`${url}/stats/reset`, 'POST');
    const load: LoadResult = await runLoad({ url: url!, rate: o.rate, seconds: o.seconds, next });
    const stats = await json<Stats>(`${url}/stats`);
    const stopped = lineOf(p, /^stopped cleanly/).catch(() => null);
    p.kill('SIGTERM');
    const exitCode = await exited(p);
    if ((await stopped) === null || exitCode !== 0) progress(`warning: the ${mode} server did not stop cleanly (exit code ${exitCode})`);
    const lat = (name: string) => ({ p50: round(load.latencyMs[name]?.p50 ?? NaN), p99: round(load.latencyMs[name]?.p99 ?? NaN) });
    return {
      requestsPerSecond: round(load.requestsPerSecond, 1),
      ok: load.ok,
      failed: load.sent - load.ok,
      latencyMs: { score: lat('score'), sample: lat('sample'), all: lat('all') },
      eventLoopDelayMs: stats.eventLoopDelayMs,
      tokensPerSecond: Math.round(stats.window.tokensPerSecond),
      steps: stats.window.steps,
      stepMs: round(stats.window.stepMs),
      loss: round(stats.loss, 4),
      generatorLagMsP99: round(load.sendLagMs.p99),
      exitCode,
    };
  } finally {
    if (p.exitCode === null) p.kill('SIGKILL');
  }
}

export async function measure(o: MeasureOptions): Promise<Measurement> {
  const loadBefore = os.loadavg()[0]!;
  const { held } = loadNames();
  // Even requests score four held-out names, odd ones sample one name with a fresh seed.
  const next = (i: number): LoadRequest =>
    i % 2 === 0
      ? { name: 'score', method: 'POST', path: '/score', body: JSON.stringify({ names: [0, 1, 2, 3].map((k) => held[(2 * i + k) % held.length]) }) }
      : { name: 'sample', method: 'GET', path: `/sample?n=1&seed=${i}` };

  const runStandalone = async () => {
    progress(`standalone training loop, ${o.seconds} s`);
    const sp = child(o.main, ['--standalone', '--seconds', String(o.seconds), '--warmup', String(o.warmup)]);
    const [line] = await lineOf(sp, /^\{.*\}$/);
    await exited(sp);
    return JSON.parse(line!) as { tokensPerSecond: number; steps: number; stepMs: number };
  };

  // The standalone loop runs first and last: the machine's speed drifts (other work on it),
  // and the two figures show by how much over the run.
  const first = await runStandalone();
  const modes = {} as Measurement['modes'];
  for (const mode of ['off', 'async', 'sync'] as const) {
    progress(`server, training ${mode}, ${o.rate} requests/s for ${o.seconds} s`);
    modes[mode] = await measureMode(mode, o, next);
  }
  const last = await runStandalone();
  const standalone = {
    tokensPerSecond: (first.tokensPerSecond + last.tokensPerSecond) / 2,
    steps: first.steps + last.steps,
    stepMs: (first.stepMs + last.stepMs) / 2,
    firstLast: [Math.round(first.tokensPerSecond), Math.round(last.tokensPerSecond)] as [number, number],
  };
  const a = modes.async;
  return {
    seconds: o.seconds,
    rate: o.rate,
    machine: {
      cpu: os.cpus()[0]?.model ?? 'unknown', cores: os.availableParallelism(), node: process.version,
      loadAverage: [round(loadBefore), round(os.loadavg()[0]!)],
    },
    standalone: {
      tokensPerSecond: Math.round(standalone.tokensPerSecond), steps: standalone.steps, stepMs: round(standalone.stepMs),
      firstLast: standalone.firstLast,
    },
    modes,
    targets: {
      asyncLoopDelayP99Under20ms: a.eventLoopDelayMs.p99 < 20,
      asyncScoreP99OverFloor: round(a.latencyMs.score.p99 / modes.off.latencyMs.score.p99),
      asyncScoreP99Within2xFloor: a.latencyMs.score.p99 <= 2 * modes.off.latencyMs.score.p99,
      asyncTokensOverStandalone: round(a.tokensPerSecond / standalone.tokensPerSecond),
      asyncTokensAtLeast80pct: a.tokensPerSecond >= 0.8 * standalone.tokensPerSecond,
      syncTokensOverStandalone: round(modes.sync.tokensPerSecond / standalone.tokensPerSecond),
    },
  };
}

export function printTable(m: Measurement): void {
  const row = (name: string, f: ModeFigures) =>
    `| ${name} | ${f.requestsPerSecond} | ${f.latencyMs.score.p50} / ${f.latencyMs.score.p99} | ` +
    `${f.latencyMs.sample.p50} / ${f.latencyMs.sample.p99} | ${f.eventLoopDelayMs.p99} | ` +
    `${f.tokensPerSecond > 0 ? f.tokensPerSecond : '—'} |`;
  console.log(
    `\n${m.rate} requests/s (half /score of 4 names, half /sample of one), ${m.seconds} s a mode; ` +
      `${m.machine.cpu}, ${m.machine.cores} cores, Node ${m.machine.node}, ` +
      `load average ${m.machine.loadAverage.join(' → ')}\n`,
  );
  console.log('| training | requests/s | /score p50 / p99 (ms) | /sample p50 / p99 (ms) | event-loop delay p99 (ms) | training tokens/s |');
  console.log('|---|---|---|---|---|---|');
  console.log(row('async twins', m.modes.async));
  console.log(row('sync ops', m.modes.sync));
  console.log(row('none (floor)', m.modes.off));
  console.log(
    `| standalone loop (no server) | | | | | ${m.standalone.tokensPerSecond} (${m.standalone.firstLast.join(' before, ')} after) |`,
  );
  const t = m.targets;
  console.log(
    `\nasync: event-loop delay p99 ${m.modes.async.eventLoopDelayMs.p99} ms (target < 20: ${t.asyncLoopDelayP99Under20ms ? 'met' : 'missed'}); ` +
      `/score p99 ${t.asyncScoreP99OverFloor}× the floor (target ≤ 2: ${t.asyncScoreP99Within2xFloor ? 'met' : 'missed'}); ` +
      `training at ${Math.round(t.asyncTokensOverStandalone * 100)}% of the standalone loop (target ≥ 80%: ${t.asyncTokensAtLeast80pct ? 'met' : 'missed'}); ` +
      `sync: ${Math.round(t.syncTokensOverStandalone * 100)}%`,
  );
}
