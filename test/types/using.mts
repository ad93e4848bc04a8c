// Where the program's lib has Symbol.dispose, a DeviceTensor is Disposable: `using` frees it.
import { softmax, tensor, upload } from 'cutloss';

export function probabilities(logits: Float32Array, rows: number, cols: number): Float32Array {
  using x = upload(tensor(logits, [rows, cols]));
  using y = softmax(x);
  y[Symbol.dispose]();
  return y.download().data as Float32Array;
}
