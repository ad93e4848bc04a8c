// npm run demo:server                      measure, in one run: no training (the floor), training with
//                                          the async twins, training with the sync ops, and the
//                                          standalone training loop; prints a table
// npm run demo:server -- --seconds N --json   the same, N seconds a mode, one JSON line on stdout
//        options: --rate R (requests/s, default 100)  --warmup S (default 2)
// npm run demo:server -- --serve [--mode async|sync|off] [--port P]
//                                          serve on 127.0.0.1 until SIGINT / SIGTERM

import { fileURLToPath } from 'node:url';
import { startTrainingServer } from './server.js';
import { Trainer, trainModes, type TrainMode } from './trainer.js';
import { measure, printTable } from './measure.js';

const args = process.argv.slice(2);
const known = new Set(['--serve', '--standalone', '--json', '--mode', '--port', '--seconds', '--rate', '--warmup']);
const takesValue = new Set(['--mode', '--port', '--seconds', '--rate', '--warmup']);

function fail(message: string): never {
  console.error(`${message}\nusage: --seconds N --rate R --warmup S --json | --serve [--mode async|sync|off] [--port P]`);
  process.exit(2);
}

const flags = new Map<string, string>();
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  if (!known.has(a)) fail(`unknown argument: ${a}`);
  if (takesValue.has(a)) {
    if (i + 1 >= args.length) fail(`${a} needs a value`);
    flags.set(a, args[++i]!);
  } else flags.set(a, '');
}
const num = (flag: string, fallback: number, ok: (x: number) => boolean) => {
  const s = flags.get(flag);
  if (s === undefined) return fallback;
  const x = Number(s);
  if (s.trim() === '' || !ok(x)) fail(`${flag}: bad value ${JSON.stringify(s)}`);
  return x;
};
const seconds = num('--seconds', 10, (x) => x > 0 && x <= 3600);
const rate = num('--rate', 100, (x) => x > 0 && x <= 10_000);
const warmup = num('--warmup', 2, (x) => x >= 0 && x <= 600);
const port = num('--port', 0, (x) => Number.isInteger(x) && x >= 0 && x < 65536);
const mode = (flags.get('--mode') ?? 'async') as TrainMode;
if (!trainModes.includes(mode)) fail(`--mode must be one of ${trainModes.join(', ')}`);

if (flags.has('--serve')) {
  const server = await startTrainingServer({ mode, port });
  console.log(`listening ${server.url} (training: ${mode})`);
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) {
      console.error(`${signal} again: exiting without waiting`);
      process.exit(1);
    }
    stopping = true;
    console.log(`${signal}: finishing the step under way`);
    await server.close();
    const t = server.trainer;
    console.log(
      `stopped cleanly after ${t.steps} steps (weights version ${t.store.current.version}, ` +
        `${t.failedSteps} failed, ${t.queuedSubmissions} queued submissions dropped)`,
    );
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
} else if (flags.has('--standalone')) {
  // The training loop alone, as the demo runs it: sync steps back to back, no server.
  const trainer = new Trainer({ mode: 'sync' });
  const until = (s: number) => performance.now() + s * 1000;
  for (const end = until(warmup); performance.now() < end; ) await trainer.step();
  trainer.resetWindow();
  for (const end = until(seconds); performance.now() < end; ) await trainer.step();
  console.log(JSON.stringify(trainer.window()));
} else {
  const result = await measure({ seconds, rate, warmup, main: fileURLToPath(import.meta.url) });
  if (flags.has('--json')) console.log(JSON.stringify(result));
  else printTable(result);
}
