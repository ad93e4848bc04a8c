#!/usr/bin/env node
// The `cutloss` command (package.json "bin"): `cutloss doctor`, `cutloss bench` (lib/bench)
// and `cutloss --version`. Exit
// status 0 when every check passed, 1 when one failed or the backend asked for is unavailable,
// 2 on bad usage.

import { packageInfo } from './native-loader.cjs';
import { runDoctor, type CheckResult, type CheckedBackend, type DoctorReport } from './doctor.js';

const USAGE = `Usage: cutloss doctor [--backend cuda|cuda-emu|cpu] [--quick] [--json] [--seed N]
       cutloss bench [--backend NAME] [--cases LIST] [--quick] [--json] [--out DIR] [--budget S] …
       cutloss --version

  Prints the backends and why each is or is not available, the GPU as nvidia-smi sees it,
  then runs every kernel on a native backend against the js reference on random shapes
  and prints each check's largest errors. Without a GPU the checks run under cuda-emu.

  --backend NAME  the backend to check (default: cuda when available, else cuda-emu)
  --quick         fewer and smaller shapes
  --json          print the report as JSON only
  --seed N        the random shapes and values (default: random; the report says which)`;

const BACKENDS: CheckedBackend[] = ['cuda', 'cuda-emu', 'cpu'];

interface Args {
  backend?: CheckedBackend;
  quick: boolean;
  json: boolean;
  seed?: number;
}

class UsageError extends Error {}

function parseArgs(argv: string[]): Args {
  const args: Args = { quick: false, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    if (flag === '--quick') args.quick = true;
    else if (flag === '--json') args.json = true;
    else if (flag === '--backend') {
      const v = value();
      if (!(BACKENDS as string[]).includes(v)) throw new UsageError(`--backend must be one of ${BACKENDS.join(', ')}, got '${v}'`);
      args.backend = v as CheckedBackend;
    } else if (flag === '--seed') {
      const v = Number(value());
      if (!Number.isSafeInteger(v) || v < 0) throw new UsageError('--seed must be a non-negative integer');
      args.seed = v;
    } else throw new UsageError(`unknown option '${a}'`);
  }
  return args;
}

const exp = (v: number) => (Number.isFinite(v) ? v.toExponential(1) : String(v));
const pad = (s: string, n: number) => (s.length >= n ? s : s + ' '.repeat(n - s.length));

function checkLine(c: CheckResult): string {
  const what = pad(`${c.op} [${c.shape.join(', ')}] ${c.dtype}${c.variant === 'plain' ? '' : ` (${c.variant})`}`, 72);
  const status = c.passed ? 'pass' : 'FAIL';
  if (c.error !== undefined) return `  ${status}  ${what} threw: ${c.error}`;
  const errors = `max abs ${pad(exp(c.maxAbsError), 8)} max rel ${pad(exp(c.maxRelError), 8)} (rtol ${exp(c.rtol)})`;
  return `  ${status}  ${what} ${errors}  ${c.ms.toFixed(0)} ms`;
}

function printHeader(r: DoctorReport): void {
  console.log(`cutloss ${r.version} doctor: Node ${r.node}, ${r.platform}\n`);
  console.log('Backends');
  for (const b of r.backends) {
    console.log(`  ${b.available ? 'yes' : 'no '}  ${pad(b.name, 9)} ${b.reason}`);
    const details = Object.entries(b.details).map(([k, v]) => `${k}: ${String(v)}`);
    if (details.length > 0) console.log(`                 ${details.join('; ')}`);
  }
  console.log('\nGPU (nvidia-smi)');
  if (r.gpu.gpus.length === 0) console.log(`  ${r.gpu.message}`);
  for (const g of r.gpu.gpus) {
    console.log(`  ${g.index}: ${g.name}, driver ${g.driverVersion}, ${g.memory}, compute capability ${g.computeCapability}`);
  }
  console.log(`\nChecks on ${r.target.backend} against the js reference: ${r.target.note} (seed ${r.seed}${r.quick ? ', quick' : ''})`);
}

function main(argv: string[]): number | Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    console.log(USAGE);
    return command === undefined ? 2 : 0;
  }
  if (command === '--version' || command === '-v' || command === 'version') {
    console.log(packageInfo().version);
    return 0;
  }
  if (command === 'bench') {
    // loaded only for this command: the benchmark's modules are of no use to the others
    return import('./bench/cli.js').then((m) => m.benchMain(rest));
  }
  if (command !== 'doctor') {
    console.error(`cutloss: unknown command '${command}'\n\n${USAGE}`);
    return 2;
  }
  let args: Args;
  try {
    if (rest.includes('--help') || rest.includes('-h')) {
      console.log(USAGE);
      return 0;
    }
    args = parseArgs(rest);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`cutloss doctor: ${e.message}\n\n${USAGE}`);
    return 2;
  }
  const started = performance.now();
  const report = runDoctor({
    backend: args.backend, quick: args.quick, seed: args.seed,
    onStart: args.json ? undefined : printHeader,
    onCheck: args.json ? undefined : (c) => console.log(checkLine(c)),
  });
  if (args.json) {
    console.log(JSON.stringify(report, null, 2));
  } else {
    if (!report.target.available) console.log(`  ${report.target.backend} is unavailable: ${report.target.reason}`);
    for (const s of report.skipped) console.log(`  skip  ${s}`);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const passed = report.checks.length - report.failed;
    console.log(`\n${report.passed ? 'OK' : 'FAILED'}: ${passed} passed, ${report.failed} failed, ${report.skipped.length} skipped ` +
      `on ${report.target.backend} (${seconds} s)`);
  }
  return report.passed ? 0 : 1;
}

const status = main(process.argv.slice(2));
if (typeof status === 'number') process.exitCode = status;
else void status.then((code) => { process.exitCode = code; });
