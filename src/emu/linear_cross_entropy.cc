// cuda/linear_cross_entropy.cu (fused linear + cross-entropy, forward and backward) compiled for the SIMT
// emulator: without __CUDACC__, cuda/runtime.h puts its launchers in cutloss::emu.
#include "../../cuda/linear_cross_entropy.cu"
