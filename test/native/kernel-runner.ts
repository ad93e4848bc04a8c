// Calls the emulated kernel launchers (cutloss::emu) directly, through the small driver
// test/kernels/kernel_runner.cc: requests are batched into one child process, each run in
// the fiber order it names. The driver computes nothing; tests compare what comes back.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Matrix } from '../../lib/tensor.js';
import * as ref from '../reference64.js';

export const root = fileURLToPath(new URL('../..', import.meta.url));

export type FiberOrder = 'forward' | 'reverse' | 'shuffled';
export const ORDERS: FiberOrder[] = ['forward', 'reverse', 'shuffled'];

export interface KernelRequest {
  op: string;
  order: FiberOrder;
  keys: Record<string, string | number | boolean>;
  blobs: Record<string, Float32Array | Uint16Array | Uint8Array | Int32Array>;
}

export type KernelResponse = { ok: true; blobs: Record<string, Uint8Array> } | { ok: false; error: string };

/**
 * Builds the driver against the kernel sources in cuda/, or against a copy of cuda/ whose
 * files `patch` rewrites (to show that a broken kernel is caught). Returns the executable.
 */
export function buildRunner(patch?: (file: string, text: string) => string): string {
  const work = mkdtempSync(path.join(tmpdir(), 'cutloss-kernels-'));
  let cudaDir = path.join(root, 'cuda');
  if (patch !== undefined) {
    cudaDir = path.join(work, 'cuda');
    cpSync(path.join(root, 'cuda'), cudaDir, { recursive: true });
    for (const f of ['common.cuh', 'rowwise.cu', 'sparse.cu', 'gumbel.cu', 'cross_entropy.cu', 'linear_cross_entropy.cu', 'linear_ce_backward.cuh', 'tile_gemm.cuh']) {
      const p = path.join(cudaDir, f);
      writeFileSync(p, patch(f, readFileSync(p, 'utf8')));
    }
    cpSync(path.join(root, 'test/kernels'), path.join(work, 'test/kernels'), { recursive: true });
  }
  const source = patch === undefined ? path.join(root, 'test/kernels/kernel_runner.cc') : path.join(work, 'test/kernels/kernel_runner.cc');
  const exe = path.join(work, 'kernel_runner');
  const cxx = ['-std=c++17', '-O1', '-Wall', '-Wextra', '-Werror', '-I', cudaDir];
  // The kernels are instrumented for the emulator's shared-memory race checker; the emulator is not.
  execFileSync('g++', [...cxx, '-c', path.join(cudaDir, 'simt/simt.cc'), '-o', `${exe}-simt.o`], { cwd: root, stdio: 'pipe' });
  execFileSync('g++', [...cxx, ...RACE_CHECK_FLAGS, '-c', source, '-o', `${exe}.o`], { cwd: root, stdio: 'pipe' });
  execFileSync('g++', [`${exe}.o`, `${exe}-simt.o`, '-o', exe], { cwd: root, stdio: 'pipe' });
  return exe;
}

/**
 * GCC's thread-sanitizer instrumentation without its runtime: every load and store of the
 * kernel sources calls the emulator's hooks (cuda/simt/simt.cc), which check shared memory for
 * races and bounds. Never on the link line (that would link libtsan).
 */
export const RACE_CHECK_FLAGS = ['-fsanitize=thread', '--param=tsan-instrument-func-entry-exit=0'];

function keyText(v: string | number | boolean): string {
  if (typeof v === 'boolean') return v ? '1' : '0';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : String(Math.fround(v));
  return v;
}

/** Runs every request in one process; responses in request order. */
export function runKernels(exe: string, requests: KernelRequest[], orderSeed = 20240531): KernelResponse[] {
  const parts: Buffer[] = [];
  for (const r of requests) {
    const tokens = [`op=${r.op}`, `order=${r.order}`, `orderSeed=${orderSeed}`];
    for (const [k, v] of Object.entries(r.keys)) tokens.push(`${k}=${keyText(v)}`);
    const blobs = Object.entries(r.blobs);
    for (const [name, data] of blobs) tokens.push(`@${name}=${data.byteLength}`);
    parts.push(Buffer.from(tokens.join(' ') + '\n'));
    for (const [, data] of blobs) parts.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  }
  const out = execFileSync(exe, { input: Buffer.concat(parts), maxBuffer: 1 << 30 });
  const responses: KernelResponse[] = [];
  let at = 0;
  while (at < out.length) {
    const nl = out.indexOf(10, at);
    const header = out.subarray(at, nl).toString('utf8');
    at = nl + 1;
    if (header.startsWith('error')) {
      responses.push({ ok: false, error: header });
      continue;
    }
    const blobs: Record<string, Uint8Array> = {};
    for (const token of header.split(' ').slice(1)) {
      const [name, bytes] = token.slice(1).split('=') as [string, string];
      const n = Number(bytes);
      blobs[name] = new Uint8Array(out.subarray(at, at + n)); // a copy, aligned for typed views
      at += n;
    }
    responses.push({ ok: true, blobs });
  }
  if (responses.length !== requests.length) throw new Error(`${requests.length} requests, ${responses.length} responses`);
  return responses;
}

/** The blob as f32 values (bf16 bits widened). */
export function blobValues(r: KernelResponse, name: string, dtype: 'f32' | 'bf16' = 'f32'): Float32Array {
  if (!r.ok) throw new Error(r.error);
  const b = r.blobs[name];
  if (b === undefined) throw new Error(`no blob ${name}`);
  if (dtype === 'f32') return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  const bits = new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) outBits[i] = bits[i]! << 16;
  return out;
}

/** Raw bytes of a blob, for bit-for-bit comparisons across fiber orders. */
export function blobBytes(r: KernelResponse, name: string): Uint8Array {
  if (!r.ok) throw new Error(r.error);
  return r.blobs[name]!;
}

export function sameBits(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * Runs each request in the three fiber orders; returns the forward-order response after
 * checking that the other orders returned the very same bytes (a difference is a race).
 */
export function runInAllOrders(exe: string, requests: Omit<KernelRequest, 'order'>[]): KernelResponse[] {
  const all = runKernels(exe, requests.flatMap((r) => ORDERS.map((order) => ({ ...r, order }))));
  return requests.map((r, i) => {
    const [first, ...others] = all.slice(i * ORDERS.length, (i + 1) * ORDERS.length) as [KernelResponse, ...KernelResponse[]];
    if (!first.ok) throw new Error(`${r.op}: ${first.error}`);
    others.forEach((o, k) => {
      for (const name of Object.keys(first.blobs)) {
        if (!sameBits(blobBytes(first, name), blobBytes(o, name))) {
          throw new Error(`${r.op}: ${name} differs between the forward and ${ORDERS[k + 1]} fiber orders (a race)`);
        }
      }
    });
    return first;
  });
}

// ---------------------------------------------------------------- inputs

/** Rows as a host matrix of the dtype (bf16 rounds each value). */
export function matrix(values: number[][], dtype: 'f32' | 'bf16'): Matrix {
  const rows = values.length;
  const cols = values[0]!.length;
  const data = dtype === 'f32' ? ref.rowsToF32(values) : ref.rowsToBf16(values);
  return { data, rows, cols, dtype, shape: [rows, cols] };
}

/** The values a kernel actually sees (bf16 decoded), as float64 rows for the reference. */
export const asRows = (m: Matrix) => ref.toF64Rows(m.data, m.rows, m.cols);
