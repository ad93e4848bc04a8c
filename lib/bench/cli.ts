// `cutloss bench [options]`: argument parsing and printing; the work is in run.ts.

import { CASE_GROUPS, runBench, type BenchOptions } from './run.js';
import type { RunBackend } from './protocol.js';

export const BENCH_USAGE = `Usage: cutloss bench [--backend cuda|cuda-emu|cpu|js] [--cases LIST] [--quick] [--tiny]
                    [--json] [--out DIR] [--budget SECONDS] [--runs N] [--threads N]
                    [--no-peers] [--energy-window MS]

  Times cutloss on a matrix of cases against limits and peers measured in the same run, each
  contestant in a process of its own; on a GPU, with nvidia-smi sampled beside every timing
  (peak memory, mean power, energy per token). Writes bench.md, bench.json and the sweep's
  charts (sweep-time.svg, sweep-memory.svg) to the output folder.

  --backend NAME    default: cuda when available, else cpu, else js
  --cases LIST      comma-separated: ${CASE_GROUPS.join(', ')} (all sweep points), or one sweep
                    point such as sweep-V32k; default: all
  --quick           2 timed runs, half the sweep points, shorter energy windows
  --tiny            tiny shapes (the default on cuda-emu, whose kernels run on the CPU)
  --json            print the JSON report instead of the table
  --out DIR         where the files go (default: ./cutloss-bench)
  --budget SECONDS  start no contestant after this long; the rest are listed as skipped
  --runs N          timed runs per contestant after warm-up (default 5, --quick 2)
  --threads N       CPU threads for cutloss cpu and the CPU peers (default: all)
  --no-peers        cutloss, its limits and the materialized baseline only
  --energy-window MS  per device contestant: fwd+bwd repeated this long between two readings
                    of the energy counter (default 3000, --quick 1000, tiny 200)`;

class UsageError extends Error {}

const BACKENDS: RunBackend[] = ['cuda', 'cuda-emu', 'cpu', 'js'];

export function parseBenchArgs(argv: string[]): BenchOptions {
  const o: BenchOptions = { quick: false, json: false, outDir: 'cutloss-bench', peers: true, progress: true };
  const positive = (flag: string, v: string, integer: boolean) => {
    const n = Number(v);
    if (!(n > 0) || !Number.isFinite(n) || (integer && !Number.isInteger(n))) throw new UsageError(`${flag} must be a positive ${integer ? 'integer' : 'number'}, got '${v}'`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--quick': o.quick = true; break;
      case '--tiny': o.tiny = true; break;
      case '--json': o.json = true; break;
      case '--no-peers': o.peers = false; break;
      case '--out': o.outDir = value(); break;
      case '--backend': {
        const v = value();
        if (!(BACKENDS as string[]).includes(v)) throw new UsageError(`--backend must be one of ${BACKENDS.join(', ')}, got '${v}'`);
        o.backend = v as RunBackend;
        break;
      }
      case '--cases': {
        const names = value().split(',').map((s) => s.trim()).filter((s) => s !== '');
        const bad = names.filter((n) => !CASE_GROUPS.includes(n) && !/^sweep-V\d+k?$/.test(n));
        if (bad.length > 0 || names.length === 0) throw new UsageError(`--cases: unknown case(s) ${bad.join(', ') || '(none)'}; known: ${CASE_GROUPS.join(', ')}, sweep-V<V>`);
        o.cases = names;
        break;
      }
      case '--budget': o.budgetSeconds = positive(flag, value(), false); break;
      case '--runs': o.runs = positive(flag, value(), true); break;
      case '--threads': o.threads = positive(flag, value(), true); break;
      case '--energy-window': o.energyWindowMs = positive(flag, value(), false); break;
      default: throw new UsageError(`unknown option '${a}'`);
    }
  }
  return o;
}

export async function benchMain(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(BENCH_USAGE);
    return 0;
  }
  let o: BenchOptions;
  try {
    o = parseBenchArgs(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`cutloss bench: ${e.message}\n\n${BENCH_USAGE}`);
    return 2;
  }
  try {
    const report = await runBench(o);
    if (o.json) console.log(JSON.stringify(report, null, 2));
    else {
      const { markdownReport } = await import('./report.js');
      console.log(markdownReport(report));
      const charts = report.charts;
      console.log(`wrote ${o.outDir}/bench.md, bench.json${charts?.files.length ? `, ${charts.files.join(', ')}` : ''}${charts?.reason ? ` (${charts.reason})` : ''}`);
    }
    return 0;
  } catch (e) {
    console.error(`cutloss bench: ${(e as Error).message}`);
    return 1;
  }
}
