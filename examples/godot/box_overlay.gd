extends Control
## Draws the boxes of the application's data (examples/detector.py) over the video, with
## Godot's own drawing: lines and labels stay sharp at any window size, and the picture itself
## is never touched.
##
## Put it over the video [TextureRect] (same rectangle; it ignores the mouse) and call
## [method show_data] with the data of each frame shown ([signal CamstreamClient.
## frame_data_received]). A box [code]{"x", "y", "w", "h", "label"}[/code] is in the pixels of
## the frame it was found in ([code]width[/code] x [code]height[/code] in the data); it is mapped
## to where the [TextureRect] shows that picture (keep-aspect-centred), whatever size the client
## receives frames at.

## Colour of the boxes and their labels.
@export var color: Color = Color(0.3, 0.9, 0.45)
## Line width of the boxes, in screen pixels.
@export var line_width: float = 2.0
## Font size of the labels.
@export var font_size: int = 14

## The boxes of the frame shown now, as its data gave them.
var boxes: Array = []
## Whether the detector was on for that frame ([code]detecting[/code] in the data).
var detecting: bool = false
## The size of the picture the boxes are measured in (the data's width and height).
var source_size: Vector2 = Vector2.ZERO


func _ready() -> void:
	mouse_filter = Control.MOUSE_FILTER_IGNORE


## Takes the data of the frame shown now (a [Dictionary] from examples/detector.py; anything
## else clears the boxes) and redraws.
func show_data(value: Variant) -> void:
	boxes = []
	detecting = false
	if value is Dictionary:
		var data: Dictionary = value
		var found: Variant = data.get("boxes")
		if found is Array:
			boxes = found
		detecting = data.get("detecting") == true
		var width: Variant = data.get("width")
		var height: Variant = data.get("height")
		if (width is float or width is int) and (height is float or height is int):
			source_size = Vector2(width, height)
	queue_redraw()


## The boxes in this control's coordinates (each a [Rect2]) with their labels, for the video
## shown in [param shown] (see [method fitted_rect]).
func box_rects(shown: Rect2) -> Array[Rect2]:
	var rects: Array[Rect2] = []
	if shown.size.x <= 0.0 or source_size.x <= 0.0 or source_size.y <= 0.0:
		return rects
	var scale: Vector2 = shown.size / source_size
	for box in boxes:
		if not box is Dictionary:
			continue
		var b: Dictionary = box
		var numbers: Array = [b.get("x"), b.get("y"), b.get("w"), b.get("h")]
		if not numbers.all(func(n: Variant) -> bool: return n is float or n is int):
			continue
		var position: Vector2 = shown.position + Vector2(numbers[0], numbers[1]) * scale
		rects.append(Rect2(position, Vector2(numbers[2], numbers[3]) * scale))
	return rects


## Where the video's picture is on screen, in this control's coordinates: the parent
## [TextureRect]'s texture fitted (aspect kept, centred) in its rectangle. Empty without one.
func shown_rect() -> Rect2:
	var video: TextureRect = get_parent() as TextureRect
	if video == null or video.texture == null:
		return Rect2()
	return fitted_rect(Vector2(video.texture.get_size()), size)


func _draw() -> void:
	var rects: Array[Rect2] = box_rects(shown_rect())
	var font: Font = get_theme_default_font()
	for i in rects.size():
		var rect: Rect2 = rects[i]
		draw_rect(rect, color, false, line_width)
		var label: Variant = boxes[i].get("label") if boxes[i] is Dictionary else null
		if label is String and font != null:
			var at: Vector2 = rect.position + Vector2(0.0, -line_width - 2.0)
			draw_string(font, at, label, HORIZONTAL_ALIGNMENT_LEFT, -1, font_size, color)


## A picture of [param picture] pixels fitted in [param area], aspect kept, centred (what a
## [TextureRect] with [constant TextureRect.STRETCH_KEEP_ASPECT_CENTERED] shows).
static func fitted_rect(picture: Vector2, area: Vector2) -> Rect2:
	if picture.x <= 0.0 or picture.y <= 0.0:
		return Rect2()
	var scale: float = minf(area.x / picture.x, area.y / picture.y)
	var fitted: Vector2 = picture * scale
	return Rect2((area - fitted) / 2.0, fitted)
