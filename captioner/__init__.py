"""Captioner: Flickr8k image captioning."""
