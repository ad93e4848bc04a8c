// `npm run demo:server` as users run it: the server stops cleanly on SIGTERM and SIGINT, and
// the measurement prints one JSON line with the figures of every mode.

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));
const main = 'examples/server/main.ts';

function start(args: string[]) {
  const p = spawn(process.execPath, ['--import', 'tsx', main, ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let stderr = '';
  p.stderr.on('data', (d) => (stderr += d));
  const waiters: [RegExp, (m: RegExpMatchArray) => void][] = [];
  createInterface({ input: p.stdout }).on('line', (line) => {
    lines.push(line);
    for (const [re, resolve] of waiters) {
      const m = line.match(re);
      if (m !== null) resolve(m);
    }
  });
  const exit = new Promise<number | null>((resolve) => p.on('exit', (code) => resolve(code)));
  const waitFor = (re: RegExp) => new Promise<RegExpMatchArray>((resolve) => waiters.push([re, resolve]));
  return { p, lines, exit, waitFor, stderr: () => stderr };
}

describe('demo:server', () => {
  for (const [signal, mode] of [['SIGTERM', 'async'], ['SIGINT', 'sync']] as const) {
    it(`${signal} finishes the step under way and exits 0 (${mode} training)`, async () => {
      const s = start(['--serve', '--mode', mode, '--port', '0']);
      const [, url] = await s.waitFor(/^listening (http:\/\/127\.0\.0\.1:\d+) \(training: (\w+)\)/);
      let steps = 0;
      while (steps < 3) steps = ((await (await fetch(`${url}/stats`)).json()) as { steps: number }).steps;
      const stopped = s.waitFor(/^stopped cleanly after (\d+) steps \(weights version (\d+), 0 failed/);
      s.p.kill(signal);
      expect(await s.exit, s.stderr()).toBe(0);
      const [, n, version] = await stopped;
      expect(Number(n)).toBeGreaterThanOrEqual(steps);
      expect(version).toBe(n); // every step that started was finished and published
      expect(s.lines).toContain(`${signal}: finishing the step under way`);
      await expect(fetch(`${url}/stats`)).rejects.toThrow(); // nothing listens any more
    }, 20_000);
  }

  it('measures every mode and prints one JSON line with --json', async () => {
    const s = start(['--seconds', '0.6', '--warmup', '0', '--rate', '20', '--json']);
    expect(await s.exit, s.stderr()).toBe(0);
    expect(s.lines).toHaveLength(1);
    const m = JSON.parse(s.lines[0]!);
    expect(m.rate).toBe(20);
    expect(m.standalone.tokensPerSecond).toBeGreaterThan(0);
    for (const mode of ['async', 'sync', 'off']) {
      const f = m.modes[mode];
      expect(f.ok, mode).toBe(12); // 20/s × 0.6 s, every one answered 2xx
      expect(f.failed, mode).toBe(0);
      expect(f.exitCode, mode).toBe(0); // stopped cleanly by SIGTERM
      for (const k of ['score', 'sample', 'all']) {
        expect(f.latencyMs[k].p50, `${mode} ${k}`).toBeGreaterThan(0);
        expect(f.latencyMs[k].p99, `${mode} ${k}`).toBeGreaterThanOrEqual(f.latencyMs[k].p50);
      }
      expect(f.eventLoopDelayMs.p99, mode).toBeGreaterThanOrEqual(0);
      if (mode === 'off') expect(f.tokensPerSecond).toBe(0);
      else expect(f.tokensPerSecond, mode).toBeGreaterThan(0);
    }
    expect(typeof m.targets.asyncScoreP99Within2xFloor).toBe('boolean');
  }, 60_000);

  it('rejects unknown flags', async () => {
    const s = start(['--sconds', '3']);
    expect(await s.exit).toBe(2);
    expect(s.stderr()).toMatch(/unknown argument: --sconds/);
  }, 20_000);
});
