//! safetensors checkpoints via mmap, single file or sharded.
