"""Motion from a DiT's self-attention: q/k capture, Attention Motion Flow (AMF), losses, latent guidance.

    capture.py   q/k of one self-attention block after norm and RoPE; truncated guided forward
    amf.py       AMF global (DiTFlow: all keys) and windowed (FastVMT: tiles, coarse centre, fine window)
    losses.py    weighted AMF loss, corresponding-window loss, DiTFlow's masked MSE
    guidance.py  the sampling-loop intervention: latent optimisation with AdamW and gradient reuse
"""
