// cuda/zscore.cu (the spherical Z-loss from the classifier's moments) compiled for the SIMT
// emulator: without __CUDACC__, cuda/runtime.h puts its launchers in cutloss::emu.
#include "../../cuda/zscore.cu"
