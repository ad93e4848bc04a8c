// Backend selection: js is always there; the native backends say why they are not.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { CutlossError, backends, getBackend, setBackend, softmax, tensor } from '../lib/index.js';

afterEach(() => setBackend('auto'));

/** What 'auto' must pick: the first available of cuda, cpu, js. */
function autoChoice(): string {
  return ['cuda', 'cpu', 'js'].find((n) => backends().find((b) => b.name === n)!.available)!;
}

describe('backends()', () => {
  it('lists every backend with availability and a reason', () => {
    const list = backends();
    expect(list.map((b) => b.name)).toEqual(['cuda', 'cuda-emu', 'cpu', 'js']);
    for (const b of list) {
      expect(typeof b.available).toBe('boolean');
      expect(b.reason.length).toBeGreaterThan(0);
    }
    expect(list.find((b) => b.name === 'js')!.available).toBe(true);
    // The native CPU backend comes with the addon; its reason says what runs (threads, SIMD, GEMM).
    const cpu = list.find((b) => b.name === 'cpu')!;
    if (cpu.available) expect(cpu.reason).toMatch(/thread.*GEMM: (OpenBLAS|portable)/);
    else expect(cpu.reason).toMatch(/^the native addon (did not load|was built without the CPU backend)/);
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
  it('picks the fastest available automatically (cuda ▸ cpu ▸ js) and accepts js by name', () => {
    expect(getBackend()).toBe(autoChoice());
    setBackend('js');
    expect(getBackend()).toBe('js');
    expect(softmax(tensor(new Float32Array([0, 0]), [2])).data[0]).toBe(0.5);
  });
  it('refuses unavailable and unknown backends with E_BACKEND, keeping the current one', () => {
    const unavailable = backends().filter((b) => !b.available).map((b) => b.name);
    for (const name of [...unavailable, 'tpu']) {
      try {
        setBackend(name as never);
        throw new Error('expected a throw');
      } catch (e) {
        expect(e).toBeInstanceOf(CutlossError);
        expect((e as CutlossError).code).toBe('E_BACKEND');
        expect((e as Error).message).toContain(name);
      }
      expect(getBackend()).toBe(autoChoice());
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
    expect(run('auto')).toBe(autoChoice());
    if (backends().find((b) => b.name === 'cpu')!.available) expect(run('cpu')).toBe('cpu');
    if (!backends().find((b) => b.name === 'cuda')!.available) expect(run('cuda')).toBe('E_BACKEND');
    expect(run('gpu')).toBe('E_BACKEND');
  });
});
