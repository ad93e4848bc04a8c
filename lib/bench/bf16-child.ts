// Entry of the S2-bf16 / S2-peaked-bf16 / sweep-bf16 child process (lib/bench/run.ts starts it; see bf16.ts).
import { bf16Main } from './bf16.js';

try {
  bf16Main();
} catch (e) {
  console.error(e);
  process.exit(1);
}
