// Entry of the S2-losses / zscore-sweep child process (lib/bench/run.ts starts it; see losses.ts).
import { lossesMain } from './losses.js';

try {
  lossesMain();
} catch (e) {
  console.error(e);
  process.exit(1);
}
