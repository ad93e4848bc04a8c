// Just enough of the ONNX protobuf format to build the two one-node models the benchmark runs
// on onnxruntime-node (an inference runtime): Softmax over the last axis, and Gemm E·Wᵀ (the
// logits of S2). Field numbers are those of onnx.proto3.

function varint(n: bigint): number[] {
  let v = BigInt.asUintN(64, n); // negative int64s are encoded in ten bytes
  const out: number[] = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v !== 0n) byte |= 0x80;
    out.push(byte);
  } while (v !== 0n);
  return out;
}

const tag = (field: number, wire: 0 | 2) => varint(BigInt((field << 3) | wire));
const int = (field: number, n: number) => [...tag(field, 0), ...varint(BigInt(n))];
const bytes = (field: number, b: number[]) => [...tag(field, 2), ...varint(BigInt(b.length)), ...b];
const str = (field: number, s: string) => bytes(field, [...Buffer.from(s, 'utf8')]);

const FLOAT = 1;
const ATTRIBUTE_INT = 2;

/** ValueInfoProto of a float tensor with symbolic or fixed dims. */
function floatValue(name: string, dims: (number | string)[]): number[] {
  const shape = dims.flatMap((d) => bytes(1, typeof d === 'number' ? int(1, d) : str(2, d)));
  const tensorType = [...int(1, FLOAT), ...bytes(2, shape)];
  return [...str(1, name), ...bytes(2, bytes(1, tensorType))];
}

function model(node: number[], inputs: number[][], output: number[]): Uint8Array {
  const graph = [...bytes(1, node), ...str(2, 'cutloss_bench'), ...inputs.flatMap((i) => bytes(11, i)), ...bytes(12, output)];
  const opset = [...str(1, ''), ...int(2, 13)];
  return Uint8Array.from([...int(1, 8), ...bytes(8, opset), ...bytes(7, graph)]);
}

/** Y = Softmax(X) over the last axis, X [N, V]. */
export function softmaxModel(): Uint8Array {
  const axis = [...str(1, 'axis'), ...int(3, -1), ...int(20, ATTRIBUTE_INT)];
  const node = [...str(1, 'X'), ...str(2, 'Y'), ...str(3, 'softmax'), ...str(4, 'Softmax'), ...bytes(5, axis)];
  return model(node, [floatValue('X', ['N', 'V'])], floatValue('Y', ['N', 'V']));
}

/** L = E·Wᵀ, E [N, D], W [V, D]. */
export function logitsModel(): Uint8Array {
  const transB = [...str(1, 'transB'), ...int(3, 1), ...int(20, ATTRIBUTE_INT)];
  const node = [...str(1, 'E'), ...str(1, 'W'), ...str(2, 'L'), ...str(3, 'logits'), ...str(4, 'Gemm'), ...bytes(5, transB)];
  return model(node, [floatValue('E', ['N', 'D']), floatValue('W', ['V', 'D'])], floatValue('L', ['N', 'V']));
}
