// The float32 edge matrix every backend runs (test/edges.test.ts): rows whose max spans
// 1e-30 … 3.4e38 in magnitude, ties at the max, ±inf, NaN, −inf-masked rows and subnormals,
// each with a label. Values are f32-exact; the float64 reference recomputes from them.

export const F32_MAX = 3.4028234663852886e38;
const SUBNORMAL = 1.401298464324817e-45;

/** [name, rows of 5 logits, one label per row] */
export const EDGE_MATRIX: [name: string, rows: number[][], labels: number[]][] = [
  ['tiny maxima', [[1e-30, -1e-30, 0, 5e-31, 1e-30], [-1e-30, -2e-30, -1e-30, -3e-30, -5e-30]], [0, 2]],
  ['maxima 1e4', [[1e4, 1e4 - 1, -1e4, 0, 1e4 - 0.5], [-1e4, -1e4 - 2, -1e4, -1e4 - 1, -1e4]], [1, 3]],
  ['maxima 1e30', [[1e30, 1e30, -1e30, 0, 1], [-1e30, -1e30, -1e30, -1e30, -1e30]], [0, 4]],
  ['ties at 3e38', [[3e38, 3e38, 0, -3e38, 1], [-3e37, -3e37, -3e37, -3e37, -3e37]], [1, 0]],
  ['float32 max', [[F32_MAX, F32_MAX, F32_MAX, 1, 0], [-F32_MAX, 0, -F32_MAX, 1, -1]], [2, 3]],
  ['subnormals', [[SUBNORMAL, -SUBNORMAL, 0, 1e-40, -1e-40], [1e-40, 1e-40, 1e-40, 1e-40, 1e-40]], [3, 1]],
  ['-inf masked entries', [[-Infinity, 1, 2, -Infinity, 0], [-Infinity, -Infinity, 3e38, -Infinity, 3e38]], [2, 0]],
  ['+inf entries', [[Infinity, 1, 2, 0, -1], [Infinity, Infinity, 3, 0, 0]], [1, 0]],
  ['NaN entries', [[NaN, 1, 2, 0, -1], [0, 0, 0, 0, NaN]], [1, 4]],
  ['all -inf', [[-Infinity, -Infinity, -Infinity, -Infinity, -Infinity], [-Infinity, 0, 0, 0, 0]], [0, 0]],
];
