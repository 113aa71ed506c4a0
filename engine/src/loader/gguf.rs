//! GGUF v2/v3 reader and dequantization.
