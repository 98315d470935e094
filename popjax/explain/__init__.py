"""Explanations: attention-scaled Grad-CAM (gradcam), rendering (render) and faithfulness checks."""
