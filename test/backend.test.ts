// Backend selection: js is always there; the native backends say why they are not.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { CutlossError, backends, getBackend, setBackend, softmax, tensor } from '../lib/index.js';

afterEach(() => setBackend('auto'));

describe('backends()', () => {
  it('lists every backend with availability and a reason', () => {
    const list = backends();
    expect(list.map((b) => b.name)).toEqual(['cuda', 'cuda-emu', 'cpu', 'js']);
    for (const b of list) {
      expect(typeof b.available).toBe('boolean');
      expect(b.reason.length).toBeGreaterThan(0);
    }
    expect(list.find((b) => b.name === 'js')!.available).toBe(true);
    const cpu = list.find((b) => b.name === 'cpu')!;
    expect(cpu.available).toBe(false);
    expect(cpu.reason).toMatch(/not built/);
    // Without a GPU, cuda says why: a CUDA error, a build without CUDA, or no addon.
    const cuda = list.find((b) => b.name === 'cuda')!;
    if (!cuda.available) expect(cuda.reason).toMatch(/^cudaError\w+ \(\d+\)|^built without CUDA|^no CUDA device|^the native addon did not load/);
  });
  it('returns copies the caller cannot use to corrupt the registry', () => {
    const list = backends();
    list[0]!.available = true;
    expect(backends()[0]!.available).toBe(false);
  });
});

describe('setBackend / getBackend', () => {
  it('picks js automatically here and accepts it by name', () => {
    expect(getBackend()).toBe('js');
    setBackend('js');
    expect(getBackend()).toBe('js');
    expect(softmax(tensor(new Float32Array([0, 0]), [2])).data[0]).toBe(0.5);
  });
  it('refuses unavailable and unknown backends with E_BACKEND, keeping the current one', () => {
    for (const name of ['cuda', 'cpu', 'tpu']) {
      try {
        setBackend(name as never);
        throw new Error('expected a throw');
      } catch (e) {
        expect(e).toBeInstanceOf(CutlossError);
        expect((e as CutlossError).code).toBe('E_BACKEND');
        expect((e as Error).message).toContain(name);
      }
      expect(getBackend()).toBe('js');
    }
  });
  it('CUTLOSS_BACKEND selects a backend, and a bad value fails clearly', () => {
    const entry = fileURLToPath(new URL('../dist/esm/index.js', import.meta.url));
    const run = (value: string) =>
      execFileSync(process.execPath, ['--input-type=module', '-e', `import('${entry}').then(m => { try { console.log(m.getBackend()) } catch (e) { console.log(e.code) } })`], {
        env: { ...process.env, CUTLOSS_BACKEND: value },
        encoding: 'utf8',
      }).trim();
    expect(run('js')).toBe('js');
    expect(run('auto')).toBe('js');
    expect(run('cuda')).toBe('E_BACKEND');
    expect(run('gpu')).toBe('E_BACKEND');
  });
});
