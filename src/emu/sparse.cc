// cuda/sparse.cu (sparsemax and entmax15, forward and backward) compiled for the SIMT emulator:
// without __CUDACC__, cuda/runtime.h puts its launchers in cutloss::emu.
#include "../../cuda/sparse.cu"
