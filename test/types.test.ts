// The published declarations as a user's compiler sees them: the user files in test/types/
// import 'cutloss' from a fresh project whose node_modules/cutloss is the built package
// (package.json + dist), and compile with `tsc --strict` and otherwise default settings, on
// TypeScript 5 and 7. Good files compile with zero errors; in the bad files, each line after
// a `// @error CODES PATTERN` comment must fail with one of CODES (TS2353|TS2561) and a
// message matching PATTERN (a regular expression), and nothing else may fail. Also: every
// export carries a JSDoc comment, with an @example on each function and class.
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from './helpers.js';

const fixtures = join(repoRoot, 'test', 'types');
const compilers = [
  { major: 5, tsc: join(repoRoot, 'node_modules', 'typescript5', 'bin', 'tsc') },
  { major: 7, tsc: join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc') },
];

interface Diagnostic { file: string; line: number; code: string; message: string }
interface Expectation { file: string; line: number; codes: string[]; pattern: RegExp }

/** tsc's diagnostics, one per error with its indented continuation lines, and its other output lines. */
function compile(tsc: string, cwd: string, args: string[]): { diagnostics: Diagnostic[]; other: string[] } {
  let out: string;
  try {
    out = execFileSync(process.execPath, [tsc, '--noEmit', '--pretty', 'false', ...args], { cwd, encoding: 'utf8' });
  } catch (e) {
    out = String((e as { stdout?: string }).stdout ?? '');
    if (out === '') throw e;
  }
  const diagnostics: Diagnostic[] = [];
  const other: string[] = [];
  for (const text of out.split('\n')) {
    const m = /^(.+?)\((\d+),\d+\): error (TS\d+): (.*)$/.exec(text);
    if (m) diagnostics.push({ file: m[1]!, line: Number(m[2]), code: m[3]!, message: m[4]! });
    else if (/^error TS\d+: /.test(text)) diagnostics.push({ file: '', line: 0, code: text.slice(6, 12), message: text });
    else if (/^\s/.test(text) && diagnostics.length > 0) diagnostics.at(-1)!.message += ` ${text.trim()}`;
    else if (text.trim() !== '') other.push(text);
  }
  return { diagnostics, other };
}

/** The `// @error` annotations of a fixture: each applies to the line after it. */
function expectations(file: string): Expectation[] {
  const lines = readFileSync(join(fixtures, file), 'utf8').split('\n');
  const out: Expectation[] = [];
  lines.forEach((text, i) => {
    const m = /^\s*\/\/ @error ((?:TS\d+\|?)+) (.+)$/.exec(text);
    if (m) out.push({ file, line: i + 2, codes: m[1]!.split('|'), pattern: new RegExp(m[2]!) });
  });
  return out;
}

/** Errors that no annotation allows, and annotations that no error satisfied. */
function check(diagnostics: Diagnostic[], expected: Expectation[]): { unexpected: string[]; missing: string[] } {
  const show = (d: Diagnostic) => `${d.file}:${d.line} ${d.code} ${d.message}`;
  const allows = (x: Expectation, d: Diagnostic) => d.file === x.file && d.line === x.line && x.codes.includes(d.code) && x.pattern.test(d.message);
  return {
    unexpected: diagnostics.filter((d) => !expected.some((x) => allows(x, d))).map(show),
    missing: expected.filter((x) => !diagnostics.some((d) => allows(x, d)))
      .map((x) => `${x.file}:${x.line} expected ${x.codes.join('|')} matching ${x.pattern}; got ${
        diagnostics.filter((d) => d.file === x.file && d.line === x.line).map(show).join('; ') || 'no error'}`),
  };
}

let project = '';
const files = readdirSync(fixtures);
// compiled with default settings: no lib beyond TypeScript's default, no module settings
const defaultSettingsFiles = files.filter((f) => /[^.]\.ts$/.test(f));
// Symbol.dispose needs a lib that has it; the "require" condition (dist/cjs) needs NodeNext
const nodeNextFiles = files.filter((f) => /\.[cm]ts$/.test(f));

beforeAll(() => {
  for (const d of ['dist/esm/index.d.ts', 'dist/cjs/index.d.ts']) {
    if (!existsSync(join(repoRoot, d))) throw new Error(`${d} is missing: run npm run build first`);
  }
  // a consumer's view: node_modules/cutloss holds package.json and dist, nothing of the sources
  project = mkdtempSync(join(tmpdir(), 'cutloss-types-'));
  const pkg = join(project, 'node_modules', 'cutloss');
  mkdirSync(pkg, { recursive: true });
  copyFileSync(join(repoRoot, 'package.json'), join(pkg, 'package.json'));
  symlinkSync(join(repoRoot, 'dist'), join(pkg, 'dist'), 'dir');
  for (const f of files) copyFileSync(join(fixtures, f), join(project, f));
});

afterAll(() => {
  if (project !== '') rmSync(project, { recursive: true, force: true });
});

describe.each(compilers)('declarations under TypeScript $major', ({ major, tsc }) => {
  it(`is TypeScript ${major}`, () => {
    const version = execFileSync(process.execPath, [tsc, '--version'], { encoding: 'utf8' });
    expect(version).toMatch(new RegExp(`Version ${major}\\.`));
  });

  it('user files compile with --strict and default settings; each mistake is named', () => {
    const { diagnostics } = compile(tsc, project, ['--strict', ...defaultSettingsFiles]);
    const good = defaultSettingsFiles.filter((f) => !f.startsWith('bad-'));
    expect(good.length).toBeGreaterThanOrEqual(3);
    expect(diagnostics.filter((d) => !d.file.startsWith('bad-')), 'errors outside the bad files').toEqual([]);
    const expected = defaultSettingsFiles.flatMap(expectations);
    expect(expected.length).toBeGreaterThanOrEqual(15);
    expect(check(diagnostics, expected)).toEqual({ unexpected: [], missing: [] });
  }, 120_000); // a whole tsc run: seconds, more on a busy machine

  it('with Symbol.dispose in the lib, a DeviceTensor works with `using`; the CommonJS declarations compile', () => {
    const { diagnostics, other } = compile(tsc, project, [
      '--strict', '--module', 'nodenext', '--target', 'es2022', '--lib', 'es2022,esnext.disposable', '--listFiles', ...nodeNextFiles,
    ]);
    // the CommonJS file was checked against dist/cjs, the ESM one against dist/esm
    expect(other.some((f) => f.endsWith('dist/cjs/index.d.ts'))).toBe(true);
    expect(other.some((f) => f.endsWith('dist/esm/index.d.ts'))).toBe(true);
    expect(nodeNextFiles).toEqual(['require.cts', 'using.mts']);
    expect(check(diagnostics, nodeNextFiles.flatMap(expectations))).toEqual({ unexpected: [], missing: [] });
  }, 120_000);
});

describe('documentation', () => {
  it('every export of the package has a JSDoc comment, every function and class an @example', () => {
    // TypeScript 5's compiler API reads the built declarations (7 has no JavaScript API)
    const ts = createRequire(import.meta.url)('typescript5') as typeof import('typescript5');
    const entry = join(repoRoot, 'dist', 'esm', 'index.d.ts');
    const program = ts.createProgram([entry], { strict: true, noEmit: true });
    const checker = program.getTypeChecker();
    const moduleSymbol = checker.getSymbolAtLocation(program.getSourceFile(entry)!)!;
    const exported = checker.getExportsOfModule(moduleSymbol);
    expect(exported.length).toBeGreaterThan(60);
    const undocumented: string[] = [];
    const withoutExample: string[] = [];
    for (const s of exported) {
      const target = s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s;
      const doc = ts.displayPartsToString(target.getDocumentationComment(checker)).trim();
      if (doc === '') undocumented.push(s.name);
      const callable = target.flags & (ts.SymbolFlags.Function | ts.SymbolFlags.Class);
      if (callable && !target.getJsDocTags(checker).some((t) => t.name === 'example')) withoutExample.push(s.name);
    }
    expect(undocumented, 'exports without a JSDoc comment').toEqual([]);
    expect(withoutExample, 'functions and classes without an @example').toEqual([]);
  });
});
