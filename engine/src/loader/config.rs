//! HF `config.json` and `generation_config.json`.
