// cuda/rowwise.cu (logSumExp, softmax, logSoftmax, stablemax and logStablemax, forward and backward) compiled for the SIMT emulator:
// without __CUDACC__, cuda/runtime.h puts its launchers in cutloss::emu.
#include "../../cuda/rowwise.cu"
