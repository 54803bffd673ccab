"""LA-Transformer: ViT-B/16 at 224×224, batch 32 (the official notebook), 751 ids (Market-1501);
the official head, and the note's improved one (y-pooling, AM-Softmax + triplet) after the backbone."""
from model_cases import ModelCase
from reidkern.models.la_transformer import LATransformer
from reidkern.models.la_transformer_eager import LATransformerEager


def _build(smoke, **flags):
    if smoke:
        model = LATransformer(8, img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, **flags)
    else:
        model = LATransformer(751, **flags)
    return model, LATransformerEager(model)


CASES = [
    ModelCase("la_transformer", _build, batch=32, size=(224, 224), smoke_batch=8, smoke_size=(32, 32),
              note="ViT-B/16, 14 parts, lambda 8, 751 ids"),
    ModelCase("la_transformer_improved", lambda smoke: _build(smoke, y_pooling=True, metric_loss=True),
              batch=32, size=(224, 224), smoke_batch=8, smoke_size=(32, 32), parts=("head",),
              note="y-pooling, AM-Softmax + triplet"),
]
