"""The IR and what defines its meaning: layers, reference interpreters, fixed point, memory plan, weight formats."""
