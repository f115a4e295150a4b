"""The CPU stand-in for DeepSeek-R1-Distill-Qwen: a synthetic task, an R1-format tokenizer and a
tiny Qwen2 model warm-started to answer in both modes (``autothink toy build``)."""
