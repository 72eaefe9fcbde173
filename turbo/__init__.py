"""turbo core: schedules, the Denoiser, tiny models, samplers, video I/O, the toy world."""
