"""Keeping the lights on: plans, rate limits, admission control. Pure logic with time passed in;
state sits behind one interface (in-process now, Redis when scaled out)."""
