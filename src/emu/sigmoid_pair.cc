// cuda/sigmoid_pair.cu (the pairwise sigmoid loss of SigLIP) compiled for the SIMT emulator:
// without __CUDACC__, cuda/runtime.h puts its launchers in cutloss::emu.
#include "../../cuda/sigmoid_pair.cu"
