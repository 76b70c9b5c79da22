"""`refine`: the GAN side (training, export, evaluation)."""
import click

from cli.common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """The GAN side of GANFaces: make 3DMM renders photorealistic while keeping identity
    (Gecer et al., ECCV 2018), export and evaluate the dataset."""


if __name__ == "__main__":
    main()
