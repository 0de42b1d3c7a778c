"""Models from other tools into the IR, and back out: the stage between the model definitions and training.

* ``tflite``: a fully integer-quantized TensorFlow Lite flatbuffer <-> a ``QuantModel`` carrying the
  integers TFLite Micro derives (import_tflite / export_tflite, bit-exact both ways);
* ``torch_export``: a ``torch.export`` graph -> a ``FloatModel``;
* ``files``: a user's model file, by its kind;
* ``tflm``: TFLite Micro's own interpreter as the independent oracle.

Nothing is imported here, so ``import mcuprune.frontend`` loads neither torch nor TFLite Micro.
"""
