"""Transfer: fine-tuning strategies (`strategies`, built on path-regex parameter groups in
`partition`), LoRA (`lora`), partial restore into new models (`restore`) and linear probes on
cached features (`probe`)."""
