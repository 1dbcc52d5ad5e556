"""The data a model sees: label files, manifests and the listing (labels), the image Dataset, its
epoch order and loader (dataset), decoding and transforms (transforms); videos decoded by seeking
(video), faces found and cropped (faces), and videos turned into face crops in the image layout (frames,
the frames stage).

May import sample (training's self-blended fakes are the sample's manipulation) and the base.
"""
