"""transformers' own zero-shot pipeline (CLIPModel + CLIPProcessor), the reference for parity tests."""

import numpy as np


def transformers_probs(checkpoint, images, labels):
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(checkpoint)).eval()
    proc = CLIPImageProcessor.from_pretrained(str(checkpoint))
    tok = CLIPTokenizer.from_pretrained(str(checkpoint))
    pixels = proc(images=images, return_tensors="pt")["pixel_values"]
    ids = tok(labels, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], pixel_values=pixels)
    return out.logits_per_image.softmax(dim=-1).numpy().astype(np.float64)
