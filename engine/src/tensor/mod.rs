//! A small tensor type over CPU (and later CUDA) memory; no autograd.
