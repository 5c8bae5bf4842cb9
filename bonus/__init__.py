"""DD2424 Assignment 2, Exercise 5: a stronger two-layer network, on assignment2.py's network.

    python3 -m bonus --data-dir DIR            # the recipe, 4 networks: about 40 minutes on 2 cores
    python3 -m bonus explore --data-dir DIR    # its ablation on 45,000 / 5,000: about 4 hours
    python3 -m bonus distil --data-dir DIR     # from a convolutional teacher: 4-8 hours
    python3 -m bonus --quick                   # tiny sizes, a smoke test in seconds

The recipe (one hidden layer of m units, W1 in the top principal directions, mirroring and
shifts, Adam with eta falling linearly to 0) is trained `members` times with consecutive seeds;
averaging k networks' scores is one wider network, and validation picks how many and how the
network looks at an image (plain, with its mirror image, or with moved copies too). The next
seeds repeat that choice. Every finished run's record goes to bonus/results/runs.jsonl under
its key (bonus.keys: settings, data, and a probe of what its code computes), its weights to
bonus/models/ (the teacher's to bonus/results/); a rerun reuses them, and a run cut short
resumes. distil: the same network trained on the scores of a convolutional teacher (torch) for
views of the training images, its levers measured over seeds beside the labels alone.

The modules, each importing only those above it (and assignment2 under them all):
  settings    one network's settings (Extras), the recipe and sizes, the ablation's rows
  augment     mirroring and shifts, the principal subspace, test-time views, nets of nets
  updates     the update rules (SGD, Nesterov momentum, Adam), fused and threaded
  store       the store of runs: trial records, progress files, fingerprints of arrays
  wide        one wide network trained through assignment2.train's hooks, and its record
  distil      the distillation loss and targets, the teacher's views, the gain
  teacher     the convolutional teacher (torch)
  keys        what makes a stored run reusable: settings, data and a probe of the code
  experiment  one output folder: its data and every run through one store path
  outputs     the results files for people and the figures
  steps       recipe, explore (the ablation), and what they share
  distil_step distil: the teacher, its scores, the search, the ablation, the final networks
  cli         the command line
"""
