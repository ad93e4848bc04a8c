// Run by test/package/check-install.sh in an empty project where the packed tarball was
// installed: what a user's first ESM script does. CUTLOSS_EXPECT says which addon the install
// should have given: 'prebuilt' | 'cuda' (built from source with the CUDA part) | 'no-cuda' | 'js'.
import { backends, crossEntropy, linearCrossEntropy, softmax, tensor, CutlossError } from 'cutloss';
import { checkAddon, checkLoss } from './consumer-checks.cjs';

const info = Object.fromEntries(backends().map((b) => [b.name, b]));
checkAddon(info, process.env.CUTLOSS_EXPECT);
checkLoss({ crossEntropy, linearCrossEntropy, softmax, tensor, CutlossError });
console.log('esm: ok');
