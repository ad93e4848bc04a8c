// cuda/normalize.cu (unit rows for margin softmax) compiled for the SIMT emulator: without
// __CUDACC__, cuda/runtime.h puts its launchers in cutloss::emu.
#include "../../cuda/normalize.cu"
