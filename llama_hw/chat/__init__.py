"""`llama-hw chat`: FastChat's CLI chat loop on any backend, with llama_hw's model loading and patches."""
