"""Ground package shared by every FastSwitch service: service life cycle, shared memory, logging,
model description (spec, tokenizer) and request validation. It imports no service package."""
