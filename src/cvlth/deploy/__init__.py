"""What a ticket buys at inference: its model with the pruned weights exactly zero (:mod:`.tickets`),
exported to ONNX (:mod:`.export`), and its latency on every engine present (:mod:`.speed`)."""
