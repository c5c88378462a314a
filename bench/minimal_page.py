"""The least a caption page can show, without a model: the browsers' baseline for `bench/load.py --page minimal`.

An uploaded photo comes back as an 800-pixel JPEG, beside two fixed captions with their statistics and under a
heading with its file name, and once more as the "heatmap": what the Caption page shows for one photo, minus the
sidebar, the widgets and the model. The bench waits for the same texts on both pages.
"""

import io

import streamlit as st
from PIL import Image

st.title("Caption photos")
upload = st.file_uploader("Photos", type=["jpg", "jpeg", "png"])
if upload is not None:
    image = Image.open(io.BytesIO(upload.getvalue())).convert("RGB")
    image.thumbnail((800, 800))
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG", quality=85)
    st.subheader(upload.name, anchor=False)
    left, right = st.columns([2, 3])
    left.image(jpeg.getvalue())
    captions = ("a dog runs on the grass", "a brown dog runs through the grass")
    for column, caption in zip(right.columns(2), captions, strict=True):
        column.markdown(f"#### {caption}")
        column.caption("log p = -4.20 · score = -3.10 · 6 words")
    st.image(jpeg.getvalue(), caption="Greedy — attention for every word")
