"""Streamlit pages of the Captioner app (`streamlit run app.py`) and the modules they share."""
