// Entry of the S1-loop child process (lib/bench/run.ts starts it; see loop.ts).
import { loopMain } from './loop.js';

loopMain().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
