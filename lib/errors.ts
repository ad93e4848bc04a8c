/**
 * Stable error codes: callers branch on `code`, never on message text. README "Errors" says
 * when each is thrown and what to do about it.
 *
 * @example
 * const retryable: CutlossErrorCode[] = ['E_OOM'];
 */
export type CutlossErrorCode =
  | 'E_SHAPE'
  | 'E_DTYPE'
  | 'E_LABEL'
  | 'E_OPTION'
  | 'E_DISPOSED'
  | 'E_BACKEND'
  | 'E_OOM'
  | 'E_INTERNAL';

/**
 * The one error class cutloss throws (async twins reject with it): a stable `code` and a
 * message that names the argument, the expected and the actual value.
 *
 * @example
 * try {
 *   crossEntropy(x, labels);
 * } catch (e) {
 *   if (e instanceof CutlossError && e.code === 'E_LABEL') console.error(e.message);
 * }
 */
export class CutlossError extends Error {
  readonly code: CutlossErrorCode;
  constructor(code: CutlossErrorCode, message: string) {
    super(`${code}: ${message}`);
    this.name = 'CutlossError';
    this.code = code;
  }
}

/** Short, readable description of a value for error messages. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return `array of length ${value.length}`;
  if (ArrayBuffer.isView(value)) {
    const n = (value as unknown as { length?: number }).length;
    return `${value.constructor.name}(${n ?? value.byteLength})`;
  }
  if (typeof value === 'object') return value.constructor?.name ?? 'object';
  return typeof value;
}
