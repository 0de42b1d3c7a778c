"""QuantModel -> C: the operator table, generated model sources, the model blob, the TVM backend."""
