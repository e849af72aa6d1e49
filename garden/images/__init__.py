"""Root filesystems from images: the rootfs URI grammar, the plain data the store and the
actors share, and the pure rules that turn an image's config into container defaults."""
