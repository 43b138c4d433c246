"""nerfleet: distributed zero-shot clinical NER benchmark."""
