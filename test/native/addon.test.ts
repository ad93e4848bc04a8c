// The native addon: it loads, needs no CUDA shared library, and backend selection says
// what it can and cannot do here. Without it the package still works on js and says why.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { backends, getBackend, setBackend, softmax, tensor } from '../../lib/index.js';
import { NATIVE_INTERFACE_VERSION, emulatorOrder, native, setEmulatorOrder } from '../../lib/native.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const require = createRequire(import.meta.url);
const nodeGypBuild = require('node-gyp-build') as { resolve(dir: string): string };

afterEach(() => setBackend('auto'));

function addon() {
  const { addon: a, error } = native();
  expect(error).toBeNull();
  return a!;
}

/** Runs a module program against the built package, with only the cutloss settings given. */
function runBuilt(program: string, env: Record<string, string> = {}, cwd = root): string {
  const base = { ...process.env };
  delete base.CUTLOSS_BACKEND;
  delete base.CUTLOSS_EMU_ORDER;
  return execFileSync(process.execPath, ['--input-type=module', '-e', program], {
    cwd, env: { ...base, ...env }, encoding: 'utf8',
  }).trim();
}

describe('the addon', () => {
  it('loads through node-gyp-build with the interface this JavaScript expects', () => {
    const a = addon();
    expect(a.interfaceVersion).toBe(NATIVE_INTERFACE_VERSION);
    expect(['cmake-js', 'node-gyp']).toContain(a.build.tool);
    expect(typeof a.softmaxAsync).toBe('function');
  });

  it('needs no CUDA shared library, so it loads where no driver is (readelf -d)', (ctx) => {
    const a = addon();
    ctx.skip(!a.build.cuda, `this build has no CUDA part (${a.build.withoutCudaReason}): nothing to check`);
    const file = nodeGypBuild.resolve(root);
    const dynamic = execFileSync('readelf', ['-d', file], { encoding: 'utf8' });
    const needed = [...dynamic.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]!);
    expect(needed).toContain('libc.so.6');
    expect(needed.filter((lib) => /cuda|nvidia|nvrtc|cublas/i.test(lib))).toEqual([]);
    expect(a.build.cudaArchitectures).toBe('sm_80,sm_90,compute_90');
  });

  it('reports the CUDA runtime state without a driver instead of failing', () => {
    const s = addon().cudaStatus();
    if (!s.built) {
      expect(s.code).toBe(-1);
      return;
    }
    expect(s.runtimeVersion).toBeGreaterThan(0);
    if (s.code !== 0) {
      expect(s.name).toMatch(/^cudaError/);
      expect(s.devices).toBe(0);
    }
  });
});

describe('backends with the addon', () => {
  it('cuda says why it is unavailable: the CUDA error with its code, or the build without CUDA', () => {
    const a = addon();
    const cuda = backends().find((b) => b.name === 'cuda')!;
    const s = a.cudaStatus();
    if (!a.build.cuda) {
      expect(cuda.available).toBe(false);
      expect(cuda.reason).toBe(`built without CUDA: ${a.build.withoutCudaReason}`);
    } else if (s.code !== 0) {
      expect(cuda.available).toBe(false);
      expect(cuda.reason.startsWith(`${s.name} (${s.code}): `)).toBe(true);
      expect(cuda.details.cudaVersion).toBe(a.build.cudaVersion);
    } else {
      expect(cuda.available).toBe(s.devices > 0);
    }
  });

  it('here, without a driver, that is cudaErrorInsufficientDriver (35) when CUDA was built', (ctx) => {
    const a = addon();
    ctx.skip(!a.build.cuda, 'this build has no CUDA part');
    ctx.skip(a.cudaStatus().code !== 35, `this machine reports ${a.cudaStatus().name}`);
    expect(backends().find((b) => b.name === 'cuda')!.reason).toMatch(/^cudaErrorInsufficientDriver \(35\): /);
  });

  it('cuda-emu is available, says which ops run natively, and is chosen only by name', () => {
    const emu = backends().find((b) => b.name === 'cuda-emu')!;
    expect(emu.available).toBe(true);
    expect(String(emu.details.nativeOps).split(', ')).toEqual(expect.arrayContaining(['softmax', 'crossEntropy', 'entmax15Backward']));
    expect(String(emu.details.nativeOps).split(', ')).toContain('linearCrossEntropy');
    expect(emu.details.fallbackOps).toBe('');
    setBackend('auto');
    expect(getBackend()).not.toBe('cuda-emu');
    setBackend('cuda-emu');
    expect(getBackend()).toBe('cuda-emu');
    expect(softmax(tensor(new Float32Array([0, 0]), [2])).data[0]).toBeCloseTo(0.5, 7);
    setBackend('auto');
    expect(getBackend()).not.toBe('cuda-emu');
  });

  it('CUTLOSS_BACKEND=cuda-emu selects the emulator in a fresh process', () => {
    const out = runBuilt(
      `import * as m from './dist/esm/index.js';
       console.log(m.getBackend(), m.softmax(m.tensor(new Float32Array([1, 1]), [2])).data[0]);`,
      { CUTLOSS_BACKEND: 'cuda-emu' },
    );
    expect(out).toBe('cuda-emu 0.5');
  });
});

describe('the emulator fiber order hook', () => {
  afterEach(() => setEmulatorOrder('forward'));

  it('sets and reports the order for later emulated launches', () => {
    setEmulatorOrder('shuffled', 42);
    expect(emulatorOrder()).toEqual({ order: 'shuffled', seed: 42 });
    setEmulatorOrder('reverse');
    expect(emulatorOrder()).toEqual({ order: 'reverse', seed: 0 });
    expect(() => setEmulatorOrder('sideways' as never)).toThrow(/E_OPTION/);
    expect(() => setEmulatorOrder('shuffled', -1)).toThrow(/E_OPTION/);
  });

  it('reads CUTLOSS_EMU_ORDER=order[:seed] when the addon loads', () => {
    const program = `import { emulatorOrder } from './dist/esm/native.js';
      try { console.log(JSON.stringify(emulatorOrder())) } catch (e) { console.log(e.code) }`;
    expect(runBuilt(program, { CUTLOSS_EMU_ORDER: 'shuffled:7' })).toBe('{"order":"shuffled","seed":7}');
    expect(runBuilt(program, { CUTLOSS_EMU_ORDER: 'reverse' })).toBe('{"order":"reverse","seed":0}');
    expect(runBuilt(program, { CUTLOSS_EMU_ORDER: 'backwards' })).toBe('E_OPTION');
  });
});

describe('without the addon', () => {
  it('the package works on js, and backends() gives the load error for cuda and cuda-emu', () => {
    // A copy of the built package with no build/ and no prebuilds/: node-gyp-build finds nothing.
    const dir = mkdtempSync(path.join(tmpdir(), 'cutloss-noaddon-'));
    try {
      cpSync(path.join(root, 'package.json'), path.join(dir, 'package.json'));
      cpSync(path.join(root, 'dist'), path.join(dir, 'dist'), { recursive: true });
      symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
      const program = `import * as m from './dist/esm/index.js';
        const b = Object.fromEntries(m.backends().map((x) => [x.name, x]));
        let emu; try { m.setBackend('cuda-emu'); emu = 'selected' } catch (e) { emu = e.code }
        console.log(JSON.stringify({ cuda: b.cuda.reason, emu: b['cuda-emu'].reason, available: b['cuda-emu'].available,
          backend: m.getBackend(), p: m.softmax(m.tensor(new Float32Array([0, 0]), [2])).data[0], select: emu }));`;
      const r = JSON.parse(runBuilt(program, {}, dir)) as Record<string, unknown>;
      expect(r.cuda).toMatch(/^the native addon did not load: No native build was found/);
      expect(r.emu).toBe(r.cuda);
      expect(r.available).toBe(false);
      expect(r.backend).toBe('js');
      expect(r.p).toBe(0.5);
      expect(r.select).toBe('E_BACKEND');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
