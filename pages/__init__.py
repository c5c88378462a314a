"""Streamlit pages of the Captioner app (run `streamlit run app.py`); `common` holds what they share."""
