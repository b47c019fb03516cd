cwlVersion: v1.2
class: Workflow
$namespaces: {arv: "http://arvados.org/cwl#"}
inputs: []
outputs: []
steps:
  pinned:
    in: []
    out: []
    run:
      class: CommandLineTool
      hints:
        arv:UsePreemptible: {usePreemptible: false}
      inputs: []
      baseCommand: [echo, pinned]
      outputs: []
  spot:
    in: []
    out: []
    run: {class: CommandLineTool, inputs: [], baseCommand: [echo, spot], outputs: []}
